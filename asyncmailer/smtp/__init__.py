"""SMTP: reply framing, command bytes, the one Session I/O class and its pool."""
