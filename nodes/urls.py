from django.urls import path

from nodes import views

app_name = "nodes"
urlpatterns = [path("", views.index, name="index")]
