"""The `dicomvault` command line: one module per command group."""
