"""Streaming ingestion: Binance-compatible replay server, Binance producer and Kafka → PostgreSQL consumer."""
