"""What every loop shares: the context a launcher hands it, checkpoint file I/O, resume rules,
step precision, progress, the metrics log, fault injection and global BatchNorm."""
