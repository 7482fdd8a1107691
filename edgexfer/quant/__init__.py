"""INT8 quantization helpers: per-target QDQ recipes and rule checkers, and layer sensitivity."""
