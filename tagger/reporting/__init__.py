"""What the index tells: report queries (``report``), their rendering (``render``), the CLI's live
views (``views``) and the report/show/models commands (``commands``)."""
