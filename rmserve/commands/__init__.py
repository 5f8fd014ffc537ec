"""The subcommands of `rmserve`, a module per group; rmserve/cli.py assembles them."""
