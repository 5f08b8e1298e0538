"""The platform's real servers on one machine without Docker: Kafka (KRaft), PostgreSQL 16 and services."""
