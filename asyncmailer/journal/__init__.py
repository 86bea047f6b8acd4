"""The SQLite journal: one implementation of the Ledger seam."""
