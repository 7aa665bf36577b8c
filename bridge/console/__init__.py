"""The console: a page at ``/`` that shows the data path working (live
telemetry, dead letters, health, mappings, "try a payload"), and the JSON and
WebSocket endpoints it reads.  Everything the page shows goes through public
endpoints, so a script can get it too (docs/console.md)."""
