"""``wattgate demo``: a whole simulated cluster on one machine, an Azure trace replayed through it, and a report."""
