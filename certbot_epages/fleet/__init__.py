"""Fleet runs: the shop list drives issuance, renewal, deploy and status."""
