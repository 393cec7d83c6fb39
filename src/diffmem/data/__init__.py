"""The data: MedMNIST files, a user's image folders, near-duplicate groups."""
