-- Runs once, on the first start of the postgres:16 container: the databases the local stack creates too.
CREATE DATABASE dagster;
CREATE DATABASE superset;
