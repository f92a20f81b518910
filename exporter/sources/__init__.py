"""Sources: one file each, all behind the small interface in `base`."""
