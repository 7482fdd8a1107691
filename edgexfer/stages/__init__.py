"""One module per pipeline stage; each exposes a frozen config dataclass and one ``run_<stage>`` function."""
