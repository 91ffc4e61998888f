"""The ledger: the system of record. Result records, batches and their per-tier figures move from Redis (the hot
path) into a database, each exactly once; every read of results comes from here, as often as wanted."""
