"""The application: the command line, running a tier (in-process or as shard processes), the cold
sweep under its lock, trader discovery, logging and status. Nothing imports this package."""
