"""One module per command's action: each observes, plans, records, executes and reports.

``cli`` dispatches to them; they use the lower layers (config, observe, plan, executor,
state, report) and nothing below imports them.  What every action is given and the
guards it runs in are in ``context``; the files the actions keep true are in ``records``.
"""
