"""Learning from the served traffic: the event log's ingest into Parquet, and the refresh of the
served model behind a quality gate."""
