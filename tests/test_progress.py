"""Plain progress lines: a long epoch in a log file reports itself before it ends."""
from structgen.runtime.progress import Progress


def test_plain_mode_reports_inside_a_long_epoch(capsys):
    bar = Progress("plain", heartbeat_s=0.0).epoch(4, "ddpm epoch 1/3")
    bar.update(128, {"loss": 0.25})
    bar.update(128, {"loss": 0.125})
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].strip().startswith("ddpm epoch 1/3: 1/4") and "loss 0.25" in lines[0] and "img/s" in lines[0]
    assert "2/4" in lines[1] and "loss 0.125" in lines[1]


def test_heartbeat_waits_and_disabled_progress_is_silent(capsys):
    quiet = Progress("plain", heartbeat_s=3600.0).epoch(4, "epoch")
    quiet.update(1, {})
    off = Progress("plain", enabled=False, heartbeat_s=0.0).epoch(4, "epoch")
    off.update(1, {})
    sampling = Progress("plain", heartbeat_s=0.0).epoch(50, "sampling 8 images")
    sampling.update(0, {})                                   # samplers count steps, not images
    out = capsys.readouterr().out
    assert out.strip() == "sampling 8 images: 1/50"
