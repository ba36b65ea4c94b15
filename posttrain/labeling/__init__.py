"""The labeling and audit web app over a feedback store: side-by-side tasks people answer in a browser, blind
audits of a judge's decisions with human-vs-judge agreement, and the ``posttrain label`` command. See
docs/FEEDBACK.md ("Labeling and audits")."""
