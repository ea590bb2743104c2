"""The jobs of `python -m clip_lab <job>` beside fit/validate/test, each a module with main(argv)."""
