"""One module per stage: pure batch functions over Arrow tables plus the Prefect task that runs them."""
