"""What every package shares and nothing of ours is needed for: the paths under FARENSE_HOME
(`home`), durable file writes and locks (`files`), and the settings base class (`settings`).

A leaf: it imports nothing of ours, so `inference` and `data` may both use it and stay free of
each other.
"""
