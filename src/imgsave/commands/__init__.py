"""One module per command: each opens what it needs, calls the operations, and returns a
result that renders itself (`exit_code`, `to_json()`, `render(console)`). A command imports
every layer below it, and never another command."""
