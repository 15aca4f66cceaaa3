"""ColD Fusion (Don-Yehiya et al., ACL 2023) on all-MiniLM-L6-v2 across real text datasets: `fedmtl coldfusion`."""
