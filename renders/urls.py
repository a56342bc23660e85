from django.urls import path

from renders import views

app_name = "renders"
urlpatterns = [
    path("", views.index, name="index"),
    path("pause/", views.pause, name="pause"),
    path("retry-failed/", views.retry_failed, name="retry-failed"),
    path("templates/", views.templates, name="templates"),
    path("templates/import/", views.template_edit, name="template-import"),
    path("templates/<uuid:code>/", views.template_edit, name="template"),
    path("templates/<uuid:code>/delete/", views.template_delete, name="template-delete"),
    path("test/<uuid:code>/", views.test_render, name="test-render"),
    path("batches/", views.batches, name="batches"),
    path("batches/<uuid:code>/", views.batch_detail, name="batch"),
    path("batches/<uuid:code>/delete/", views.batch_delete, name="batch-delete"),
    path("batches/<uuid:code>/sheet.png", views.batch_sheet, name="batch-sheet"),
    path("batches/<uuid:code>/download.zip", views.batch_zip, name="batch-zip"),
    path("batches/<uuid:code>/<str:what>/", views.batch_action, name="batch-action"),
    path("history/", views.history, name="history"),
    path("<uuid:code>/", views.job_detail, name="job"),
    path("<uuid:code>/<str:what>/", views.action, name="action"),
]
