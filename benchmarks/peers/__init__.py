"""Peer servers benchmarked against vision-maas: the same model and images, their usual patterns."""
