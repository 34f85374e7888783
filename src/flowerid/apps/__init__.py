"""What users run: the command line (cli: its table, parser and exit codes; options: what commands share;
train_commands: train, check, evaluate; model_commands: predict, serve, show, info, export, backbones),
`flowerid show`'s picture (show), and the web app and JSON API (server) with its limits (serve_config)."""
