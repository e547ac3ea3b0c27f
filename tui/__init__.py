"""The Textual dashboard (arrives with the dashboard issue); reads the store's read API only."""
