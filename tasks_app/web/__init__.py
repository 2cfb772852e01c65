"""The pages for people: the dashboard, a job's page and the login page (HTML views and their
URLs). They render the current state, and `static/tasks_app/*.js` keeps them live."""
