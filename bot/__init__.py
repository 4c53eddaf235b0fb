"""The Telegram bot about SC Farense: `python -m bot` (a console chat when no token is set).

conversation.py is the transport-independent core (context, generation, logging); services.py
builds what the handlers share; app.py wires it to Telegram through handlers/, console.py to a
terminal; admin_ops.py holds the admin operations both share, retraining.py and scheduler.py the
retraining (on request and nightly); os_service.py runs the bot under systemd or launchd.
"""
