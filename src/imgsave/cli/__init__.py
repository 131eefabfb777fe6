"""The command line: the Typer app (`app.py`, the one place where errors become exit codes),
the options every command shares, declared once (`options.py`), and the parsers of its values
(`parsers.py`). It may import anything below it; nothing imports it but `__main__` and the
`imgsave` script."""

from imgsave.cli.app import app, main

__all__ = ["app", "main"]
