"""What a person at a terminal sees: stdout and stderr consoles (`consoles.py`), the progress
bar (`progress.py`), the audit's table and summary (`audit_view.py`), and generate's results in
every mode (`generate_view.py`). It imports the core, the adapters and the operations (for
their types); the commands and the CLI import it."""
