"""Training loops: phases, the growth schedule, checkpoints, metrics; they talk to a Context, never to Ray."""
