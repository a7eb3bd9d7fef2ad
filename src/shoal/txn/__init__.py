"""Transactions: the coordinator of transactional ids (state, fencing,
timeouts, recovery). The log side (markers, last stable offset) is in storage."""
