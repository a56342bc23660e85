from django.urls import path

from stories import views

app_name = "stories"
urlpatterns = [
    path("", views.index, name="index"),
    path("<uuid:code>/", views.detail, name="detail"),
    path("<uuid:code>/<slug:tab>/", views.detail, name="tab"),
    path("<uuid:code>/actions/<slug:what>/", views.action, name="action"),
    path("<uuid:code>/characters/<int:pk>/", views.character, name="character"),
    path("<uuid:code>/runs/<int:pk>/output/", views.output, name="output"),
    path("<uuid:code>/pieces/<int:number>/prompt/", views.prompt, name="prompt"),
    path("<uuid:code>/segments/<int:number>/narration/", views.narration, name="narration"),
    path("<uuid:code>/music/<int:number>/", views.music, name="music"),
    path("<uuid:code>/movie/plan/", views.movie_plan, name="movie_plan"),
    path("<uuid:code>/movie/export/", views.movie_export, name="movie_export"),
    path("<uuid:code>/movie/v<int:version>/<slug:what>/", views.movie_action, name="movie_action"),
    path("<uuid:code>/movie/tasks/<int:pk>/retry/", views.movie_retry, name="movie_retry"),
    path("pipelines/", views.pipelines, name="pipelines"),
]
