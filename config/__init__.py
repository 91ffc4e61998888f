"""The starter configuration (TOML and JSON Schema only): what `cascade init` writes into a new folder."""
