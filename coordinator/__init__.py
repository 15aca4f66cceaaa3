"""fedmtl coordinator: the Flower ServerApp (app.py) and its round (loop.py).

The round's steps, one module each: discovery.py (meet clients, identity), schedule.py (who
trains what), train.py (send, collect, fold in), affinity.py (pool measurements), evaluate.py
(cadence, sampling), regroup.py (split and merge), record.py (history, models, progress).
Around them: config.py (the run config), messaging.py (the only Flower code: messages out,
replies in, matched by reply-to id), replies.py (every reply checked before use), state.py,
groups.py, history.py, checkpoint.py, plots.py, and commands/ (`fedmtl simulate`,
`fedmtl coordinator`, `fedmtl certs`, `fedmtl keys`).
"""
