"""What users run: the command line (cli) and the web app and JSON API (server)."""
