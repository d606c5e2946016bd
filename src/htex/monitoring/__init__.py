"""Monitoring: the hub process, its store, and the dashboard that reads it.

Optional: ``pip install 'htex[monitoring]'`` (SQLAlchemy; the dashboard adds its
web server and charts).  Nothing here is imported unless monitoring is asked for.
"""
