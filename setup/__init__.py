"""Set-up scripts: the offline models `make setup` (and the cluster's models-seed Job) builds."""
