"""Byte pumps and relays: the in-sandbox TCP->Unix relay, the host Unix->TCP relay."""
