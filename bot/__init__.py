"""The Telegram bot about SC Farense: `python -m bot` (a console chat when no token is set).

conversation.py is the transport-independent core (context, generation, logging); app.py wires it
to Telegram through handlers/, console.py to a terminal; retraining.py and admin.py serve admins.
"""
