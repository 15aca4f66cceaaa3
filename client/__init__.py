"""fedmtl client: the Flower ClientApp that trains a task group's model on private local data."""
