"""The actor tree of one process (DESIGN.md §2): RootSupervisor (rest_for_one) over RateLimiter,
DbWriter and the PollerPool (one_for_one) of WalletPollers."""
