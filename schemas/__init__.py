"""Data contracts: Arrow schemas per table, run-config models, expectation suites, catalog DDL."""
