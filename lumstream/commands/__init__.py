"""One module per ``lumstream`` subcommand: HELP, add_arguments(parser), run(cfg, args)."""
