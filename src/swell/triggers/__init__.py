"""Trigger sources: webhooks, schedules, files and object-store notifications that put events on
an app's channels (see ``swell.triggers.base``)."""
