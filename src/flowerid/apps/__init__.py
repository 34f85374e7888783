"""What users run: the command line (cli: its table, parser and exit codes; options: what commands share;
train_commands: train, check, evaluate, add; model_commands: predict, serve, show, info, export, backbones;
printing: how predictions print; explain: `predict --explain`), `flowerid show`'s picture (show), and the
web app and JSON API (server) with its limits and token policy (serve_config), the token gate and rate
limit (access), HTTPS certificates (tls), what `serve` prints (announce), the page's corrections folder
(corrections) and serving on a socket (listen)."""
