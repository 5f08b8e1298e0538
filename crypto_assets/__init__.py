"""Dagster assets of the platform: exact 1- and 5-minute candles and latest prices computed with PySpark."""
