"""One LightningDataModule per dataset, reading the real on-disk format."""
