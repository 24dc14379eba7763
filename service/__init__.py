"""Online retrieval service for JTM/TDM. Never imports torch or the trainer."""
